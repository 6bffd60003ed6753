"""Prometheus metrics of ``journey dispatch`` (labels: endpoint names from the
configuration, outcomes, reasons and problems from fixed sets; never a URL, a
customer or a trigger id)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class DispatchMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.read = Counter("journey_dispatch_triggers_read_total", "Records read from journey.triggers",
                            registry=r)
        self.deliveries = Counter("journey_dispatch_deliveries_total",
                                  "Trigger deliveries by endpoint and final outcome (delivered, dead_lettered, "
                                  "already_delivered: found in the delivered-id record after a restart)",
                                  ["endpoint", "outcome"], registry=r)
        self.attempts = Counter("journey_dispatch_attempts_total",
                                "HTTP attempts by endpoint and result (2xx, redirect: a 3xx, never followed, "
                                "4xx, 5xx, timeout, error: connection, internal: the send failed inside the "
                                "dispatcher)",
                                ["endpoint", "result"], registry=r)
        self.retries = Counter("journey_dispatch_retries_total", "Attempts that will be retried, by endpoint",
                               ["endpoint"], registry=r)
        self.deadletters = Counter("journey_dispatch_deadletters_total",
                                   "Triggers written to journey.triggers.deadletter, by endpoint and reason",
                                   ["endpoint", "reason"], registry=r)
        self.skipped = Counter("journey_dispatch_skipped_total",
                               "Triggers not delivered on purpose, by reason (not_live: not written by a live "
                               "worker, stale: older than max_age, no_route)", ["reason"], registry=r)
        self.invalid = Counter("journey_dispatch_invalid_records_total",
                               "Records of journey.triggers that are not a trigger the dispatcher can route, by "
                               "problem (not_json, not_an_object, id, data, data.rule, data.kind, data.channel, "
                               "time); each goes to journey.triggers.deadletter as not_a_trigger",
                               ["problem"], registry=r)
        self.internal = Counter("journey_dispatch_internal_errors_total",
                                "Unexpected exceptions inside a delivery, by endpoint ('-': a record's own dead "
                                "letter); the delivery is retried, then dead-lettered, never left unfinished",
                                ["endpoint"], registry=r)
        self.latency = Histogram("journey_dispatch_delivery_latency_seconds",
                                 "Trigger read -> delivered (2xx), retries included, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.disabled = Gauge("journey_dispatch_endpoint_disabled",
                              "1 when the endpoint answered 410 Gone and is disabled until restart",
                              ["endpoint"], registry=r)
        self.disables = Counter("journey_dispatch_endpoint_disables_total", "Endpoints disabled by a 410 Gone",
                                ["endpoint"], registry=r)
        self.pending = Gauge("journey_dispatch_pending", "Deliveries waiting or in progress, by endpoint",
                             ["endpoint"], registry=r)
        self.in_flight = Gauge("journey_dispatch_in_flight_records",
                               "Records read and not yet finished (their offsets are not committed)", registry=r)

    def endpoints(self, names) -> None:
        """Show every configured endpoint from the start (zeros), so dashboards and alerts see it."""
        for n in names:
            self.disabled.labels(n).set(0)
            self.pending.labels(n).set(0)
            for outcome in ("delivered", "dead_lettered"):
                self.deliveries.labels(n, outcome)
            self.internal.labels(n)


def result_of(status: int | None, error: str | None) -> str:
    if status is None:
        if error == "timeout":
            return "timeout"
        return "internal" if error and error.startswith(INTERNAL) else "error"
    if 300 <= status < 400:
        return "redirect"
    return f"{status // 100}xx"


INTERNAL = "internal error"
