"""The topic catalogue: every topic journey reads or writes, with its settings.

One place for names, partition counts, cleanup policies and retention; the
worker, ``journey topics create``, ``journey produce`` and the documents under
``topics/`` (``catalog.yaml``, ``asyncapi.yaml``, written by ``journey topics
export``) all come from here.

All source topics, the internal topic and the state changelog share one
partition count: the worker keeps a customer's state on the partition that
customer's events are read from (Faust refuses tables whose partition count
differs from their source topics).
"""

from __future__ import annotations

import os
import re

PARTITIONS = 6
DAY_MS = 86_400_000

# JOURNEY_TOPIC_PREFIX (default empty) prefixes every topic journey reads, writes or creates, and the
# worker's app id (so its consumer group, state changelog and Faust's internal topics too): several
# deployments share one cluster. Read once, when journey starts.
PREFIX = os.environ.get("JOURNEY_TOPIC_PREFIX", "")
PREFIX_OK = re.fullmatch(r"[A-Za-z0-9._-]{0,100}", PREFIX) is not None

CLICKSTREAM, PURCHASES, SUPPORT = PREFIX + "journey.clickstream", PREFIX + "journey.purchases", \
    PREFIX + "journey.support"
SOURCES = (CLICKSTREAM, PURCHASES, SUPPORT)
INTERNAL = PREFIX + "journey.internal"
TRIGGERS, AUDIT, DEADLETTER = PREFIX + "journey.triggers", PREFIX + "journey.audit", PREFIX + "journey.deadletter"
OUTCOMES = PREFIX + "journey.outcomes"                  # experiments: each exposure closed at its window's end
TRIGGERS_DEADLETTER = PREFIX + "journey.triggers.deadletter"  # journey dispatch: triggers it could not deliver
DELIVERED = PREFIX + "journey.dispatch.delivered"       # journey dispatch: delivered (endpoint, trigger id)
APP_ID = PREFIX + "journey"
DISPATCH_GROUP = PREFIX + "journey-dispatch"

# which source topic carries each canonical event type (anything else: clickstream)
STREAM_OF = {
    "page.viewed": CLICKSTREAM, "product.viewed": CLICKSTREAM, "cart.product_added": CLICKSTREAM,
    "checkout.started": CLICKSTREAM, "app.error": CLICKSTREAM, "profile.updated": CLICKSTREAM,
    "order.completed": PURCHASES, "order.refunded": PURCHASES, "order.cancelled": PURCHASES,
    "payment.failed": PURCHASES, "order.shipped": PURCHASES, "order.delivered": PURCHASES,
    "ticket.opened": SUPPORT, "ticket.agent_replied": SUPPORT, "ticket.resolved": SUPPORT,
    "ticket.reopened": SUPPORT, "survey.answered": SUPPORT, "review.submitted": SUPPORT,
    "referral.sent": SUPPORT, "customer.erased": SUPPORT,
    # engagement with journey's messages, as the messaging systems report it
    "message.delivered": CLICKSTREAM, "message.opened": CLICKSTREAM, "message.clicked": CLICKSTREAM,
    "message.bounced": CLICKSTREAM, "message.complained": CLICKSTREAM, "message.unsubscribed": CLICKSTREAM,
}


def topic_for(event_type: str) -> str:
    return STREAM_OF.get(event_type, CLICKSTREAM)
TABLE = "customers"


def changelog(app_id: str = APP_ID) -> str:
    """Faust names a table's changelog ``<app id>-<table>-changelog``."""
    return f"{app_id}-{TABLE}-changelog"


# name -> (role, cleanup policy, retention ms or None for compacted, schema file, description)
_CATALOG = [
    (CLICKSTREAM, "source", "delete", 7 * DAY_MS, "event.schema.json",
     "page/product/cart/checkout activity, app errors, profile (identify) calls, and engagement with journey's "
     "messages (message.delivered/opened/clicked/bounced/complained/unsubscribed); keyed by customer id"),
    (PURCHASES, "source", "delete", 7 * DAY_MS, "event.schema.json",
     "orders, payments, refunds, cancellations, shipping and delivery; keyed by customer id"),
    (SUPPORT, "source", "delete", 7 * DAY_MS, "event.schema.json",
     "tickets, agent replies, resolutions, surveys, reviews, referrals; keyed by customer id"),
    (INTERNAL, "internal", "delete", 7 * DAY_MS, "event.schema.json",
     "events re-keyed by customer id (their producer keyed them otherwise), watermark markers "
     "from `journey produce --until`, and visitor hand-offs (header journey-control: link or absorb) "
     "between the partitions of an anonymous visitor and its customer; the record timestamp of an "
     "event is its event time"),
    (TRIGGERS, "output", "delete", 14 * DAY_MS, "trigger.schema.json",
     "triggers as CloudEvents 1.0 (structured JSON), keyed by customer id"),
    (AUDIT, "output", "delete", 14 * DAY_MS, "audit.schema.json",
     "triggers held back by the contact policy, with the reason; keyed by customer id"),
    (OUTCOMES, "output", "delete", 30 * DAY_MS, "outcome.schema.json",
     "experiments: each exposure (a trigger sent, or held out) closed at exposed_at + window on event time, "
     "with its arm, the stage and health at the decision, and whether (when, for how much) a goal event "
     "followed; keyed by customer id; `journey experiments report --broker` reads it"),
    (DEADLETTER, "output", "delete", 30 * DAY_MS, "deadletter.schema.json",
     "rejected input: the reason, where it came from (topic/partition/offset) and the original bytes"),
    (TRIGGERS_DEADLETTER, "output", "delete", 30 * DAY_MS, "triggers-deadletter.schema.json",
     "triggers `journey dispatch` could not deliver: the endpoint, the reason, attempts, the last error and "
     "the trigger; keyed by customer id"),
    (DELIVERED, "state", "delete", 14 * DAY_MS, "delivered.schema.json",
     "`journey dispatch`: (endpoint, trigger id) delivered, on the trigger's partition, read back after a "
     "restart so a delivered trigger is not sent again; keyed by trigger id"),
    ("@changelog", "state", "compact", None, None,
     "per-customer state (Faust table changelog), keyed by customer id; compacted"),
]


def catalog(partitions: int = PARTITIONS, app_id: str = APP_ID) -> list[dict]:
    """Every topic as a dict: name, role, partitions, config (Kafka topic configs), schema, description."""
    out = []
    for name, role, cleanup, retention, schema, desc in _CATALOG:
        cfg = {"cleanup.policy": cleanup}
        if retention is not None:
            cfg["retention.ms"] = str(retention)
        else:
            cfg["retention.ms"] = "-1"
        out.append({
            "name": changelog(app_id) if name == "@changelog" else name,
            "role": role,
            "partitions": partitions,
            "config": cfg,
            "schema": schema,
            "description": desc,
        })
    return out
