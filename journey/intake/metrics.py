"""Prometheus metrics of ``journey intake``. Labels come from fixed sets (endpoints, status codes,
source topics, rejection reasons); never a write key, a customer id or a body."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IntakeMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("journey_intake_requests_total",
                                "HTTP requests by endpoint (track, identify, page, screen, group, alias, batch, "
                                "import) and status (200; 400 bad request; 401 no valid write key; 408 body not "
                                "sent in time; 429 too many bytes in flight; 503 Kafka did not acknowledge in time)",
                                ["endpoint", "status"], registry=r)
        self.accepted = Counter("journey_intake_messages_accepted_total",
                                "Messages written to a source topic and acknowledged by Kafka, by topic",
                                ["topic"], registry=r)
        self.rejected = Counter("journey_intake_messages_rejected_total",
                                "Messages the worker would reject, written to journey.deadletter, by reason",
                                ["reason"], registry=r)
        self.unacknowledged = Counter("journey_intake_messages_unacknowledged_total",
                                      "Messages of requests answered 503 (the sender retries them; any that "
                                      "reached Kafka anyway are duplicates the worker recognises)", registry=r)
        self.latency = Histogram("journey_intake_request_seconds",
                                 "Time from a request's arrival to its answer, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("journey_intake_bytes_in_flight",
                               "Bytes of requests read and not yet answered (decompressed)", registry=r)
        self.in_flight_limit = Gauge("journey_intake_bytes_in_flight_limit",
                                     "Bytes in flight beyond which a request is answered 429", registry=r)
        self.kafka_up = Gauge("journey_intake_kafka_up",
                              "1 while Kafka answers the intake's producer, 0 while requests get 503", registry=r)
        self.write_keys = Gauge("journey_intake_write_keys", "Write keys accepted (their number only)",
                                registry=r)
