"""Writes deploy/grafana/dashboards/journey.json, the journey dashboard.

The dashboard is generated so that its panels, queries and layout stay
consistent (one datasource uid, unique panel ids, a grid without overlaps);
edit this file and run it, then commit both:

    python deploy/grafana/build_dashboard.py

The tests load the JSON as a Grafana dashboard model, check that it is what this
script writes, and evaluate every query against a real Prometheus scraping a
worker.
"""

from __future__ import annotations

import json
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "journey-prometheus"}  # pinned in provisioning/datasources
UID = "journey-overview"
RATE = "$__rate_interval"
RANGE = "$__range"  # the dashboard's time range (instant queries: what happened in it)
OUT = Path(__file__).parent / "dashboards" / "journey.json"
WIDTH = 24


def q(expr: str, legend: str = "", instant: bool = False, fmt: str | None = None) -> dict:
    t = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto", "range": not instant,
         "instant": instant}
    if fmt:
        t["format"] = fmt
    return t


def rate(metric: str, by: str = "", where: str = "") -> str:
    sel = f"{metric}{{{where}}}" if where else metric
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({sel}[{RATE}]))"


def quantile(qv: float, metric: str) -> str:
    return f"histogram_quantile({qv}, sum by (le) (rate({metric}_bucket[{RATE}])))"


class Board:
    def __init__(self):
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self.y}})
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def panel(self, kind: str, title: str, targets: list[dict], w: int = 8, h: int = 8, unit: str = "short",
              description: str = "", options: dict | None = None, custom: dict | None = None) -> None:
        if self.x + w > WIDTH:
            self._newline()
        p = {
            "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit, **({"custom": custom} if custom else {})}, "overrides": []},
            "options": options or {},
        }
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def stat(self, title, expr, unit="short", description="", w=4):
        self.panel("stat", title, [q(expr, instant=True)], w=w, h=4, unit=unit, description=description,
                   options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"})

    def series(self, title, targets, unit="short", description="", w=8, h=8, stack=False):
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40,
                  "stacking": {"mode": "normal" if stack else "none", "group": "A"}, "showPoints": "never"}
        self.panel("timeseries", title, targets, w=w, h=h, unit=unit, description=description, custom=custom,
                   options={"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}})

    def bars(self, title, targets, description, unit="short", w=12, h=8):
        """A horizontal bar gauge of instant values, one bar a series, in the order the query returns."""
        self.panel("bargauge", title, targets, w=w, h=h, unit=unit, description=description,
                   options={"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                            "valueMode": "color", "namePlacement": "auto", "minVizHeight": 16,
                            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})

    def build(self) -> dict:
        for i, p in enumerate(self.panels, start=1):
            p["id"] = i
        return {
            "uid": UID,
            "title": "journey",
            "description": "Live journey workers: intake, triggers and the contact policy, latency and lag, "
                           "event-time watermarks, errors, relationship aggregates, multi-step journeys, "
                           "experiments, the HTTP intake, webhook delivery, and the last replay.",
            "tags": ["journey", "kafka", "triggers"],
            "timezone": "utc",
            "editable": True,
            "graphTooltip": 1,
            "refresh": "10s",
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "links": [],
            "templating": {"list": []},
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard"}]},
            "panels": self.panels,
        }


def dashboard() -> dict:
    b = Board()
    triggers = rate("journey_triggers_total")
    suppressed = rate("journey_suppressions_total")

    b.row("Overview")
    b.stat("Events/s", rate("journey_events_consumed_total"), "ops",
           "Events accepted per second, all source topics and workers")
    b.stat("Triggers/s", triggers, "ops", "Triggers emitted per second, all rules")
    b.stat("Suppressed share", f"{suppressed} / ({suppressed} + {triggers})", "percentunit",
           "Of the triggers the rules wanted to send, the share the contact policy held back")
    b.stat("Workers up", 'sum(up{job="journey"})', "short", "Workers Prometheus reaches")
    b.stat("Customers", "sum(journey_customers)", "short", "Customers in state, all partitions")
    b.stat("Consumer lag", "sum(journey_consumer_lag_records)", "short",
           "Records not yet committed, all input partitions (log end minus committed offset)")
    b.series("Events/s by stream", [q(rate("journey_events_consumed_total", "topic"), "{{topic}}")], "ops",
             "Events accepted per second by source topic", stack=True)
    b.series("Events/s by touch point", [q(rate("journey_events_consumed_total", "touch"), "{{touch}}")], "ops",
             "Product, human and system touch points of the relationship", stack=True)
    b.series("Triggers/s by rule", [q(rate("journey_triggers_total", "rule"), "{{rule}}")], "ops",
             "Triggers emitted per second, by rule", stack=True)
    b.series("Suppressions/s by reason", [q(rate("journey_suppressions_total", "reason"), "{{reason}}")], "ops",
             "Triggers the contact policy suppressed, by reason (each one is in journey.audit with its why)",
             w=12, stack=True)
    b.series("Deferrals/s by reason", [q(rate("journey_deferrals_total", "reason"), "{{reason}}")], "ops",
             "Triggers held for a later send (quiet hours)", w=12, stack=True)

    b.row("Latency and lag")
    lat = "journey_processing_latency_seconds"
    b.series("Processing latency", [q(quantile(0.5, lat), "p50"), q(quantile(0.9, lat), "p90"),
                                    q(quantile(0.99, lat), "p99")], "s",
             "Record received by a worker -> its output handed to the producer. Includes the allowed lateness "
             "an event waits for its watermark.")
    lag = "journey_event_time_lag_seconds"
    b.series("Event-time lag", [q(quantile(0.5, lag), "p50"), q(quantile(0.99, lag), "p99")], "s",
             "Processing time minus event time: how far behind the events are (a backfill shows as days)")
    b.series("Consumer lag by topic", [q("sum by (topic) (journey_consumer_lag_records)", "{{topic}}")],
             "short", "Records not yet committed: log end (Fetch high watermark) minus committed offset")
    b.series("Consumer lag by partition",
             [q("sum by (topic, partition) (journey_consumer_lag_records)", "{{topic}}/{{partition}}")],
             "short", "Per input partition; one growing partition points at a hot customer or a stuck worker",
             w=24)

    b.row("Event time: watermarks and timers")
    b.series("Watermark delay by partition",
             [q("time() - max by (partition) (journey_watermark_seconds)", "p{{partition}}")], "s",
             "Wall clock minus each partition's event-time watermark. Steady at about the allowed lateness when "
             "live; large during a backfill; rising without bound means the partition is stuck.")
    b.series("Timers pending by partition", [q("sum by (partition) (journey_timers_pending)", "p{{partition}}")],
             "short", "Event-time timers (cart, tickets, deliveries) waiting for their watermark", stack=True)
    b.series("Events waiting for the watermark",
             [q("sum by (partition) (journey_reorder_buffer_events)", "p{{partition}}")], "short",
             "Events held in the reorder buffer, per partition", stack=True)
    b.series("Partitions by worker", [q('sum by (instance) (journey_assigned_partitions)', "{{instance}}")],
             "short", "How the consumer group split the partitions", w=12, stack=True)
    b.series("Rebalances", [q(f"sum by (instance) (increase(journey_rebalances_total[{RATE}]))", "{{instance}}")],
             "short", "Partition assignments each worker took part in", w=12)
    b.series("Stuck partitions and dead-lettered control records",
             [q("sum by (instance, partition) (journey_partition_stuck)", "stuck: {{instance}} p{{partition}}"),
              q(f"sum by (kind) (increase(journey_control_records_deadlettered_total[{RATE}]))",
                "control record dead-lettered: {{kind}}")], "short",
             "1 while a partition's event time stands still although records wait to be read or a watermark "
             "marker waits to be reached (GET /ready on the worker says why); control records of journey.internal "
             "that could not be obeyed. Both should stay at 0", w=24)

    b.row("Errors and dead letters")
    b.series("Dead letters/s by topic", [q(rate("journey_deadletters_total", "topic"), "{{topic}}")], "ops",
             "Records written to journey.deadletter, by the topic they came from")
    b.series("Rejected/s by reason", [q(rate("journey_events_rejected_total", "reason"), "{{reason}}")], "ops",
             "Why records were rejected (each one is a dead letter)")
    b.series("Redeliveries, late and re-keyed events/s",
             [q(rate("journey_events_duplicate_total"), "duplicate"), q(rate("journey_events_late_total"), "late"),
              q(rate("journey_events_rekeyed_total"), "re-keyed"),
              q(rate("journey_visitor_handoffs_total", "kind"), "visitor hand-off: {{kind}}")], "ops",
             "Duplicates are redeliveries recognized by event id; late events arrived behind the watermark; "
             "visitor hand-offs move an anonymous visitor's state and later events to its customer's partition")
    b.series("Journey condition errors/s by journey",
             [q(rate("journey_condition_errors_total", "journey"), "{{journey}}")], "ops",
             "CEL conditions and templates of user journeys that failed at run time (a missing prop, a type "
             "error): each counts as false, so a journey that should fire may not. Check the journey's expressions")
    b.series("Timer and state errors/s",
             [q(rate("journey_timer_errors_total"), "timers dropped"),
              q(rate("journey_state_errors_total", "what"), "state {{what}}")], "ops",
             "Timers whose rule failed (dropped), changelog records that could not be loaded (skipped) and states "
             "that could not be written: each is a bug or damaged data; processing goes on")

    b.row("Relationships (aggregates)")
    b.series("Customers by stage", [q("sum by (stage) (journey_customers_by_stage)", "{{stage}}")], "short",
             "Customers in state by relationship stage", stack=True)
    b.panel("bargauge", "Relationship health", [q("sum by (le) (journey_customer_health_bucket)", "{{le}}",
                                                   instant=True, fmt="heatmap")],
            unit="short", description="Customers by health score (0-100), at each partition's watermark",
            options={"orientation": "vertical", "displayMode": "gradient", "showUnfilled": True,
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})
    b.series("Stage transitions/s",
             [q(rate("journey_stage_transitions_total", "from_stage, to_stage"), "{{from_stage}} → {{to_stage}}")],
             "ops", "Customers moving between stages")
    b.series("State writes/s", [q(rate("journey_state_writes_total"), "writes")], "ops",
             "Customer states written to the changelog (one per changed customer per checkpoint)", w=24, h=6)

    b.row("Journeys")
    steps, instances = "journey_journey_steps_total", "journey_journey_instances_total"
    b.bars("Journey funnel: steps reached",
           [q(f'sort_desc(sum by (journey, step) (increase({steps}{{outcome="reached"}}[{RANGE}])))',
              "{{journey}} · {{step}}", instant=True)],
           "Instances of multi-step journeys that reached each step in the time range, by journey and step "
           "(largest first: along a journey without branches, that is the order of its steps). A step that "
           "keeps few of the step before it is where instances exit, time out or take an else", h=10)
    b.series("Journey instances/s by journey and outcome",
             [q(rate(instances, "journey, outcome"), "{{journey}} {{outcome}}")], "ops",
             "Instances entered (started by an entry event) and ended: finished (reached the end), exited "
             "(an exit event), step_limit (took the most steps an instance may, 50: a loop to look at), "
             "dropped (the oldest of more than 20 open for one customer)",
             w=12, h=10)
    b.series("Journey steps reached/s by journey and step",
             [q(rate(steps, "journey, step", 'outcome="reached"'), "{{journey}} · {{step}}")], "ops",
             "Instances coming to each step per second (the funnel over time)", w=12)
    b.series("Journey exits/s by journey and step",
             [q(rate(steps, "journey, step", 'outcome="exited"'), "{{journey}} · {{step}}")], "ops",
             "Instances an exit event ended, by the step they were at (each one is in journey.audit as exited)",
             w=12)

    b.row("Experiments")
    closed = "journey_experiment_exposures_total"
    conv = "journey_experiment_conversions_total"
    b.series("Conversion rate by rule and arm",
             [q(f"{rate(conv, 'rule, arm')} / {rate(closed, 'rule, arm')}", "{{rule}} {{arm}}")], "percentunit",
             "Share of closed exposures (sent, or held out) with a goal event in their window, by arm. The "
             "holdout is the baseline; `journey experiments report` gives the intervals")
    arms, hold = 'arm!="holdout"', 'arm="holdout"'
    arm_rate = f"({rate(conv, 'rule, arm', arms)} / {rate(closed, 'rule, arm', arms)})"
    hold_rate = f"({rate(conv, 'rule', hold)} / {rate(closed, 'rule', hold)})"
    b.series("Difference to the holdout by rule and arm",
             [q(f"{arm_rate} - on(rule) group_left() {hold_rate}", "{{rule}} {{arm}}")], "percentunit",
             "Conversion rate of each arm minus its rule's holdout, over the rate interval (points of uplift; "
             "noisy at low volume: read the report's interval before acting)")
    b.series("Exposures closed/s by rule, arm and stage",
             [q(rate(closed, "rule, arm, stage"), "{{rule}} {{arm}} {{stage}}")], "ops",
             "Exposures whose goal window ended, by relationship stage at the decision", stack=True)
    b.series("Converted value/s by rule and arm",
             [q(rate("journey_experiment_converted_value_total", "rule, arm"), "{{rule}} {{arm}}")], "short",
             "Revenue of converting goal events per second, by arm")

    b.row("HTTP intake")
    requests = "journey_intake_requests_total"
    # the status class as a label: "2", "4", "5" (the legend adds "xx")
    by_class = f'label_replace(rate({requests}[{RATE}]), "class", "$1", "status", "([0-9])..")'
    b.series("Intake requests/s by endpoint and status class",
             [q(f"sum by (endpoint, class) ({by_class})", "{{endpoint}} {{class}}xx")], "reqps",
             "HTTP requests to `journey intake` by endpoint (track, identify, page, screen, group, alias, batch, "
             "import) and answer class: 2xx only once Kafka acknowledged every message; 4xx a bad body (400), "
             "no valid write key (401), a body not sent in time (408) or too many bytes in flight (429); 5xx "
             "Kafka did not acknowledge in time (503, the SDKs retry)", stack=True)
    b.series("Intake messages accepted/s by topic",
             [q(rate("journey_intake_messages_accepted_total", "topic"), "{{topic}}")], "ops",
             "Messages written to a source topic and acknowledged by Kafka", stack=True)
    b.series("Intake messages rejected/s by reason",
             [q(rate("journey_intake_messages_rejected_total", "reason"), "{{reason}}"),
              q(rate("journey_intake_messages_unacknowledged_total"), "unacknowledged (503, retried)")], "ops",
             "Messages the worker would reject, written to journey.deadletter with their reason; and messages of "
             "requests answered 503, which the senders send again")
    lat = "journey_intake_request_seconds"
    b.series("Intake request latency", [q(quantile(0.5, lat), "p50"), q(quantile(0.99, lat), "p99")], "s",
             "A request's arrival to its answer, Kafka's acknowledgement (acks=all) included; a p99 near the "
             "ack timeout (--ack-timeout, 5 s) means 503s")
    b.series("Intake bytes in flight",
             [q("max by (instance) (journey_intake_bytes_in_flight)", "{{instance}}"),
              q("max(journey_intake_bytes_in_flight_limit)", "limit (429 beyond)")], "bytes",
             "Bytes of requests read and not yet answered, per intake, against the limit beyond which new "
             "requests get 429 with Retry-After (--max-in-flight)")
    b.series("Intake up and Kafka reachable",
             [q("max by (instance) (journey_intake_kafka_up)", "Kafka up: {{instance}}"),
              q('max by (instance) (up{job="journey-intake"})', "scraped: {{instance}}")], "short",
             "1 while Kafka answers the intake's producer; 0: every request gets 503 and /ready is 503. "
             "'scraped' is Prometheus reaching the intake's /metrics (job journey-intake)")

    b.row("Webhook delivery (journey dispatch)")
    b.series("Deliveries/s by endpoint and outcome",
             [q(rate("journey_dispatch_deliveries_total", "endpoint, outcome"), "{{endpoint}} {{outcome}}")], "ops",
             "Triggers delivered (2xx), dead-lettered, or found already delivered after a restart")
    b.series("Delivery latency", [q(quantile(0.5, "journey_dispatch_delivery_latency_seconds"), "p50"),
                                  q(quantile(0.99, "journey_dispatch_delivery_latency_seconds"), "p99")], "s",
             "Trigger read -> 2xx, retries included")
    b.series("Retries/s and attempts/s by result",
             [q(rate("journey_dispatch_retries_total", "endpoint"), "retry {{endpoint}}"),
              q(rate("journey_dispatch_attempts_total", "endpoint, result"), "{{endpoint}} {{result}}")], "ops",
             "HTTP attempts by answer class (2xx, 4xx, 5xx, timeout, error) and the retries they cause")
    b.series("Webhook dead letters/s by reason",
             [q(rate("journey_dispatch_deadletters_total", "endpoint, reason"), "{{endpoint}} {{reason}}")], "ops",
             "Triggers written to journey.triggers.deadletter, with why (re-drive them from there)")
    b.series("Pending deliveries and disabled endpoints",
             [q("sum by (endpoint) (journey_dispatch_pending)", "pending {{endpoint}}"),
              q("max by (endpoint) (journey_dispatch_endpoint_disabled)", "disabled {{endpoint}}")], "short",
             "Deliveries waiting or in progress per endpoint; 1 = disabled by a 410 Gone until restart")
    b.series("Skipped on purpose", [q(rate("journey_dispatch_skipped_total", "reason"), "{{reason}}")], "ops",
             "Not delivered by design: not_live (a replay's triggers), stale (older than max_age), no_route")

    b.row("Last replay or backfill")
    b.stat("Replay events", "max(journey_replay_lines)", "short",
           "Lines read by the last `journey replay --metrics-file`", w=6)
    b.stat("Replay triggers", "sum(journey_replay_triggers)", "short", "Triggers the last replay produced", w=6)
    b.stat("Replay throughput", "max(journey_replay_events_per_second)", "ops", "Lines per second", w=6)
    b.stat("Replay finished", "max(journey_replay_finished_timestamp_seconds) * 1000", "dateTimeFromNow",
           "When the last replay finished", w=6)
    b.series("Replay triggers by rule", [q("sum by (rule) (journey_replay_triggers)", "{{rule}}")], "short",
             "Triggers of the last replay, by rule: compare with the live rates above", w=12)
    b.series("Replay suppressions by reason", [q("sum by (reason) (journey_replay_suppressions)", "{{reason}}")],
             "short", "Suppressions of the last replay, by reason", w=12)
    b.bars("Replay journey funnel: steps reached",
           [q('sort_desc(sum by (journey, step) (journey_replay_journey_steps{outcome="reached"}))',
              "{{journey}} · {{step}}", instant=True)],
           "Instances of multi-step journeys that reached each step in the last replay (largest first): compare "
           "a backtest's funnel with the live one above")
    b.bars("Replay journey instances by outcome",
           [q("sum by (journey, outcome) (journey_replay_journey_instances)", "{{journey}} {{outcome}}",
              instant=True)],
           "Instances of multi-step journeys in the last replay: entered, and ended finished (reached the end), "
           "exited (an exit event), step_limit or dropped")
    return b.build()


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
