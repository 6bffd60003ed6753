"""Prometheus metrics of the live worker, served on ``/metrics`` of its web port.

Nothing here runs per event on the hot path except two bucket increments: the
counters the engine keeps anyway (``Engine.stats``), the worker's own counts and
two bulk-filled histograms are turned into metric families when Prometheus
scrapes (a custom collector), so metrics cost nothing between scrapes.

Names follow Prometheus conventions: ``journey_`` prefix, base units
(``_seconds``), ``_total`` for counters. Labels are bounded sets: topic,
partition, canonical event type (unknown types count as ``other``), touch
point, rule, kind, reason, stage, and a multi-step journey's name and step names
(the rule file's). Never a customer id or anything personal.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections import Counter

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import __version__
from ..core import catalog, health
from ..core.engine import INSTANCE_OUTCOMES, STEP_OUTCOMES

# processing latency: record received -> its effects handed to the producer (target: p99 < 250 ms)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0)
# event-time lag: processing time - event time (seconds to days: a backfill shows as days)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0,
               86400.0, 7 * 86400.0, 30 * 86400.0, 365 * 86400.0)
HEALTH_BUCKETS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
CONTROL_KIND_NAMES = ("watermark", "hold", "link", "absorb", "rules", "unknown")  # always exported, from 0
AGGREGATES_EVERY = 10.0  # seconds: relationship aggregates walk every customer in state


class Buckets:
    """A histogram filled in bulk (``prometheus_client``'s takes a lock per observation)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cum, acc = [], 0
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            cum.append((_fmt(bound), acc))
        acc += self.counts[-1]
        cum.append(("+Inf", acc))
        return HistogramMetricFamily(name, doc, buckets=cum, sum_value=self.sum)


def _fmt(x: float) -> str:
    return repr(float(x))


class WorkerCollector:
    """Reads the runtime when Prometheus scrapes."""

    def __init__(self, rt):
        self.rt = rt
        self._aggregates = None
        self._aggregates_at = 0.0

    def collect(self):
        rt = self.rt
        stats = rt.stats_total()
        kinds = rt.rule_kinds

        info = GaugeMetricFamily("journey_build_info", "Build of the running worker (always 1)",
                                 labels=["version", "python", "faust"])
        info.add_metric([__version__, platform.python_version(), rt.faust_version], 1)
        yield info

        sync = rt.rulesync
        rules = GaugeMetricFamily("journey_rules_info", "The rules this worker runs: the fingerprint of its rule "
                                  "configuration (SHA-256 of every setting in force, as `journey rules check` "
                                  "prints it; always 1)", labels=["fingerprint"])
        rules.add_metric([sync.fingerprint], 1)
        yield rules
        mismatch = GaugeMetricFamily("journey_rules_mismatch", "1 while another worker of this group was heard "
                                     "running rules of another fingerprint (a rollout half done), else 0")
        mismatch.add_metric([], 1 if sync.mismatch else 0)
        yield mismatch
        workers = GaugeMetricFamily("journey_rules_workers", "Workers of this group heard from lately, this one "
                                    "included, by the fingerprint of the rules they run", labels=["fingerprint"])
        for fp, n in sorted(sync.workers().items()):
            workers.add_metric([fp], n)
        yield workers

        consumed = CounterMetricFamily("journey_events_consumed_total",
                                       "Events read and accepted, by source topic, event type and touch point",
                                       labels=["topic", "type", "touch"])
        for (topic, etype), n in sorted(rt.consumed.items()):
            consumed.add_metric([topic, etype, catalog.touch_of(etype) if etype != "other" else "system"], n)
        yield consumed

        rejected = CounterMetricFamily("journey_events_rejected_total",
                                       "Records rejected (each one is also a dead letter), by reason",
                                       labels=["reason"])
        for reason, n in sorted(rt.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected

        dead = CounterMetricFamily("journey_deadletters_total",
                                   "Records written to journey.deadletter, by the topic they were read from",
                                   labels=["topic"])
        for topic, n in sorted(rt.deadletters.items()):
            dead.add_metric([topic], n)
        yield dead

        applied = CounterMetricFamily("journey_events_applied_total",
                                      "Events applied to customer state (after reordering and de-duplication)")
        applied.add_metric([], sum(stats.events.values()))
        yield applied

        dup = CounterMetricFamily("journey_events_duplicate_total",
                                  "Events recognized as redeliveries (same id seen, or older than the dedup window)")
        dup.add_metric([], stats.duplicates)
        yield dup

        erased = CounterMetricFamily("journey_events_erased_total",
                                     "Events of erased ids dropped (domain.md section 9; never dead-lettered)")
        erased.add_metric([], stats.after_erasure + rt.counts.get("erased", 0))
        yield erased
        erasures = CounterMetricFamily("journey_erasures_total",
                                       "Customers (or visitors) erased: their state deleted, a digest kept")
        erasures.add_metric([], stats.erasures)
        yield erasures

        terr = CounterMetricFamily("journey_timer_errors_total",
                                   "Timers whose rule failed when they came due (dropped; processing goes on)")
        terr.add_metric([], stats.timer_errors)
        yield terr

        cerr = CounterMetricFamily("journey_condition_errors_total",
                                   "Journey conditions and templates that failed at run time (counted as false)",
                                   labels=["journey"])
        named = set(getattr(rt.config, "journeys", {})) | {
            n for n, e in getattr(rt.config, "experiments", {}).items() if e.goal_if is not None}
        for name in sorted(named):
            cerr.add_metric([name], stats.condition_errors[name])
        yield cerr

        labels = ["rule", "arm", "stage"]
        exp_n = CounterMetricFamily("journey_experiment_exposures_total",
                                    "Experiment exposures closed (a trigger sent, or held out, whose goal window "
                                    "ended), by rule, arm and stage at the decision", labels=labels)
        exp_c = CounterMetricFamily("journey_experiment_conversions_total",
                                    "Closed exposures with a goal event in their window, by rule, arm and stage",
                                    labels=labels)
        exp_v = CounterMetricFamily("journey_experiment_converted_value_total",
                                    "Revenue of the converting goal events (currency units), by rule, arm and stage",
                                    labels=labels)
        for (rule, arm, stage), (n, x, cents) in sorted(stats.outcomes.items()):
            exp_n.add_metric([rule, arm, stage], n)
            exp_c.add_metric([rule, arm, stage], x)
            exp_v.add_metric([rule, arm, stage], cents / 100)
        yield exp_n
        yield exp_c
        yield exp_v
        untracked = CounterMetricFamily("journey_experiment_exposures_untracked_total",
                                        "Exposures not measured: the customer already had the most open exposures "
                                        "kept per customer (50)")
        untracked.add_metric([], stats.exposures_untracked)
        yield untracked

        serr = CounterMetricFamily("journey_state_errors_total",
                                   "Customer states that could not be loaded from the changelog (skipped) or written "
                                   "to it (kept in memory), by what", labels=["what"])
        serr.add_metric(["load"], rt.retired_bad_states + sum(p.bad_states for p in list(rt.procs.values())))
        serr.add_metric(["write"], rt.retired_state_errors + sum(p.state_errors for p in list(rt.procs.values())))
        yield serr

        late = CounterMetricFamily("journey_events_late_total",
                                   "Events that arrived behind the watermark (applied at once, out of order)")
        late.add_metric([], rt.late_total())
        yield late

        rekeyed = CounterMetricFamily("journey_events_rekeyed_total",
                                      "Records re-keyed through journey.internal (read on a partition not their customer's)")
        rekeyed.add_metric([], rt.counts["rekeyed"])
        yield rekeyed

        handoffs = CounterMetricFamily("journey_visitor_handoffs_total",
                                       "Records written to journey.internal because a visitor and its customer live on "
                                       "different partitions: link (state asked for), absorb (state handed over), "
                                       "forward (a later event of the visitor)", labels=["kind"])
        for kind in ("link", "absorb", "forward"):
            handoffs.add_metric([kind], rt.handoffs[kind])
        yield handoffs

        trig = CounterMetricFamily("journey_triggers_total", "Triggers emitted, by rule and kind",
                                   labels=["rule", "kind"])
        for rule, n in sorted(stats.triggers.items()):
            trig.add_metric([rule, kinds.get(rule, "unknown")], n)
        yield trig

        sup = CounterMetricFamily("journey_suppressions_total",
                                  "Triggers the contact policy suppressed, by rule and reason",
                                  labels=["rule", "reason"])
        for (rule, reason), n in sorted(stats.suppressed.items()):
            sup.add_metric([rule, reason], n)
        yield sup

        dfr = CounterMetricFamily("journey_deferrals_total",
                                  "Triggers deferred by the contact policy, by rule and reason",
                                  labels=["rule", "reason"])
        for rule, n in sorted(stats.deferred.items()):
            dfr.add_metric([rule, "quiet_hours"], n)
        yield dfr

        yield from journey_step_families(stats, getattr(rt, "journey_steps", {}))

        trans = CounterMetricFamily("journey_stage_transitions_total",
                                    "Relationship stage changes, by stage left and stage entered",
                                    labels=["from_stage", "to_stage"])
        for key, n in sorted(stats.transitions.items()):
            old, _, new = key.partition("->")
            trans.add_metric([old, new], n)
        yield trans

        writes = CounterMetricFamily("journey_state_writes_total",
                                     "Customer states written to the table changelog (one per customer per checkpoint)")
        writes.add_metric([], rt.counts["state_writes"])
        yield writes

        reb = CounterMetricFamily("journey_rebalances_total", "Partition assignments this worker took part in")
        reb.add_metric([], rt.rebalances)
        yield reb

        yield rt.latency.family("journey_processing_latency_seconds",
                                "Record received by the worker -> its event applied and its output handed to "
                                "the producer (includes the wait for the watermark)")
        yield rt.event_lag.family("journey_event_time_lag_seconds",
                                  "Processing time minus event time, per event read")

        wm = GaugeMetricFamily("journey_watermark_seconds", "Event-time watermark per partition (Unix seconds)",
                               labels=["partition"])
        timers = GaugeMetricFamily("journey_timers_pending", "Event-time timers waiting, per partition",
                                   labels=["partition"])
        waiting = GaugeMetricFamily("journey_reorder_buffer_events",
                                    "Events held for the watermark, per partition", labels=["partition"])
        customers = GaugeMetricFamily("journey_customers", "Customers in state, per partition",
                                      labels=["partition"])
        for p, proc in sorted(rt.procs.items()):
            if proc.watermark is not None:
                wm.add_metric([str(p)], proc.watermark / 1000.0)
            timers.add_metric([str(p)], proc.engine.timers_pending())
            waiting.add_metric([str(p)], proc.pending())
            customers.add_metric([str(p)], len(proc.engine.states))
        yield wm
        yield timers
        yield waiting
        yield customers

        stuck = GaugeMetricFamily("journey_partition_stuck",
                                  "1 while the partition's event time has not moved for the stuck bound "
                                  "(JOURNEY_STUCK_AFTER) although it waits on input or on a watermark marker",
                                  labels=["partition"])
        for p in sorted(rt.procs):
            stuck.add_metric([str(p)], 1 if p in rt.stuck else 0)
        yield stuck
        stalls = CounterMetricFamily("journey_partition_stalls_total",
                                     "Times a partition of this worker became stuck (see journey_partition_stuck)")
        stalls.add_metric([], rt.stalls)
        yield stalls
        control = CounterMetricFamily("journey_control_records_deadlettered_total",
                                      "Control records of journey.internal (watermark markers, publication holds, "
                                      "visitor hand-offs) that could not be obeyed and were dead-lettered, by kind",
                                      labels=["kind"])
        for kind in CONTROL_KIND_NAMES:
            control.add_metric([kind], rt.control_deadletters[kind])
        yield control

        assigned = GaugeMetricFamily("journey_assigned_partitions", "Partitions assigned to this worker")
        assigned.add_metric([], len(rt.procs))
        yield assigned

        lag = GaugeMetricFamily("journey_consumer_lag_records",
                                "Records not yet committed per input partition: the log end (the high watermark "
                                "the last Fetch reported) minus the committed offset",
                                labels=["topic", "partition"])
        for (topic, p), n in sorted(rt.consumer_lag().items()):
            lag.add_metric([topic, str(p)], n)
        yield lag

        yield from self._relationship()

    def _relationship(self):
        now = time.monotonic()
        if self._aggregates is None or now - self._aggregates_at >= AGGREGATES_EVERY:
            self._aggregates = self._compute()
            self._aggregates_at = now
        stages, buckets = self._aggregates
        by_stage = GaugeMetricFamily("journey_customers_by_stage",
                                     "Customers in state by relationship stage (aggregate)", labels=["stage"])
        for s in health.STAGES:
            by_stage.add_metric([s], stages.get(s, 0))
        yield by_stage
        yield buckets.family("journey_customer_health", "Relationship health (0-100) of the customers in state, "
                                                        "at each partition's watermark (aggregate)")

    def _compute(self):
        stages: Counter = Counter()
        buckets = Buckets(HEALTH_BUCKETS)
        hl = self.rt.config.health.half_life
        for proc in list(self.rt.procs.values()):
            now = proc.watermark
            for st in list(proc.engine.states.values()):
                stage = getattr(st, "stage", None)
                if stage is None:
                    continue  # an erased customer's marker
                stages[stage] += 1
                buckets.observe(health.score(st.hdev, st.hts, now if now is not None else (st.hts or 0), hl))
        return stages, buckets


def journey_step_families(stats, journey_steps: dict[str, list[str]]):
    """Multi-step journeys (domain.md section 8): instances by journey and outcome, and steps by
    journey, step and outcome. The rule file's journeys and steps are exported from 0, so a rate
    sees an instance's first step and a funnel shows the steps no instance reached."""
    inst = CounterMetricFamily("journey_journey_instances_total",
                               "Instances of multi-step journeys, by journey and outcome: entered (started), "
                               "finished (reached the end), exited (ended by an exit event), step_limit (ended "
                               "after the most steps an instance may take), dropped (the oldest of more than 20 "
                               "open for one customer)", labels=["journey", "outcome"])
    counts = Counter(stats.instances)
    for name in journey_steps:
        for what in INSTANCE_OUTCOMES:
            counts[(name, what)] += 0
    for (name, what), n in sorted(counts.items()):
        inst.add_metric([name, what], n)
    yield inst
    steps = CounterMetricFamily("journey_journey_steps_total",
                                "Steps of multi-step journeys, by journey, step and outcome: reached (an instance "
                                "came to the step; the funnel), exited (an exit event ended an instance there)",
                                labels=["journey", "step", "outcome"])
    counts = Counter(stats.steps)
    for name, names in journey_steps.items():
        for step in names:
            for what in STEP_OUTCOMES:
                counts[(name, step, what)] += 0
    for (name, step, what), n in sorted(counts.items()):
        steps.add_metric([name, step, what], n)
    yield steps


def registry_for(rt) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(WorkerCollector(rt))
    return reg
