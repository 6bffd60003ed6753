from datetime import date

from ..policy import customer_zone
from ..timeutil import MS_DAY, at_local, format_time
from .base import RECOVERY, Rule


class DeliveryLate(Rule):
    """A shipped order with a promised date and no delivery by then: contact before the customer asks."""

    name = "delivery_late"
    kind = RECOVERY
    transactional = True
    events = ("order.shipped", "order.delivered")
    params = {}
    default_priority = "high"
    default_offer = {"type": "delivery_apology"}

    def on_event(self, eng, st, ev, p):
        oid = ev.f.get("order_id")
        if oid is None:
            return
        if ev.type == "order.shipped":
            pb = ev.f.get("promised_by")
            if pb is None:
                return
            if isinstance(pb, date):  # a date alone: the end of that day, customer-local
                pb = at_local(pb, 0, customer_zone(st, eng.cfg)) + MS_DAY - 1
            eng.set_timer(st, self, oid, max(pb, ev.ts), {"o": oid, "pb": pb, "e": [ev.id]})
        else:
            eng.cancel_timer(st, self, oid)  # delivered at or before the promise

    def on_timer(self, eng, st, key, data, due, p):
        eng.outcome(st, "system", "delivery.late", due)
        eng.fire(st, self, data["o"], due,
                 f"order {data['o']} promised by {format_time(data['pb'])}, not delivered", data["e"],
                 {"order_id": data["o"], "promised_by": format_time(data["pb"])})


RULE = DeliveryLate()
